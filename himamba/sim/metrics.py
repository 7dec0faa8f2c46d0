"""Simulation metrics: one row per engine step, one per request, and run totals, as pandas frames.

Per step (:data:`STEP_COLUMNS`):

* traffic — ``admitted``, ``finished``, ``retracted``, ``waiting``, ``running``, tokens computed
  (``prefill_tokens``, ``decode_tokens``);
* reuse — ``prompt_tokens`` of the admitted requests, ``device_hit_tokens`` (matched on device),
  ``host_hit_tokens`` (loaded back from host), ``state_hits_device`` / ``state_hits_host``
  (requests that started from a cached state, on device or restored from host), ``load_backs``;
* evictions (from :class:`~himamba.sim.probe.EvictionProbe`) — tokens and states freed per tier,
  demotions, tombstones, cascade deletions (all zero when the engine runs without the probe);
* transfers — ``bytes_device_to_host`` / ``bytes_host_to_device`` moved during the step, and the
  slots behind them (``kv_slots_*``, ``states_*``: block mode prices them at a real model's sizes);
* occupancy at the end of the step — slots in use per pool (``*_used``, requests included) and
  device KV / states owned by the tree (``*_cached``);
* ``time_ms`` — the step's start on the engine's clock (0 when the engine runs without one).

Per request (:data:`REQUEST_COLUMNS`): lengths, the cached prefix it started from and how much of
it was loaded back, the steps it was admitted and finished, how often it was retracted. A
retracted request is admitted again; its row describes the last admission, while the step
columns count every admission.

:meth:`SimMetrics.totals` sums the flow columns, keeps the last occupancy and its peak, and adds hit rates.
Plot helpers return a :class:`matplotlib.figure.Figure` (already closed in pyplot, so a notebook
shows it once when it is the cell's value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from himamba.sim.probe import FIELDS as EVICTION_FIELDS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

TRAFFIC = ("waiting", "running", "admitted", "finished", "retracted", "prefill_tokens", "decode_tokens")
REUSE = ("prompt_tokens", "device_hit_tokens", "host_hit_tokens", "state_hits_device", "state_hits_host", "load_backs")
TRANSFERS = ("bytes_device_to_host", "bytes_host_to_device", "kv_slots_device_to_host", "kv_slots_host_to_device",
             "states_device_to_host", "states_host_to_device")
OCCUPANCY = ("device_kv_used", "device_kv_cached", "device_states_used", "device_states_cached",
             "host_kv_used", "host_states_used")
STEP_COLUMNS = ("step", *TRAFFIC, *REUSE, *EVICTION_FIELDS, *TRANSFERS, *OCCUPANCY, "time_ms")
FLOWS = tuple(c for c in STEP_COLUMNS if c not in ("step", "waiting", "running", "time_ms", *OCCUPANCY))
REQUEST_COLUMNS = ("rid", "session", "prompt_len", "total_len", "cached_tokens", "host_loaded_tokens",
                   "state_from_host", "admitted_step", "finished_step", "retractions")


class SimMetrics:
    """Accumulates step rows and request records; totals are kept even when rows are not.

    ``keep_steps`` / ``keep_requests`` = False keeps only the running totals (what a sweep needs).
    """

    def __init__(self, keep_steps: bool = True, keep_requests: bool = True) -> None:
        self.keep_steps, self.keep_requests = keep_steps, keep_requests
        self.step_rows: list[tuple] = []
        self.request_rows: list[tuple] = []
        self._sums: dict[str, int] = dict.fromkeys(FLOWS, 0)
        self._last: dict[str, int] = dict.fromkeys(OCCUPANCY, 0)
        self._peak: dict[str, int] = dict.fromkeys(OCCUPANCY, 0)
        self.steps_run = 0
        self.requests_done = 0

    def add_step(self, row: dict[str, int]) -> None:
        """Record one step (a dict with every key of :data:`STEP_COLUMNS`)."""
        self.steps_run += 1
        sums, last, peak = self._sums, self._last, self._peak
        for c in FLOWS:
            sums[c] += row[c]
        for c in OCCUPANCY:
            v = row[c]
            last[c] = v
            if v > peak[c]:
                peak[c] = v
        if self.keep_steps:
            self.step_rows.append(tuple(row[c] for c in STEP_COLUMNS))

    def add_request(self, record: dict[str, Any]) -> None:
        """Record one finished request (a dict with every key of :data:`REQUEST_COLUMNS`)."""
        self.requests_done += 1
        if self.keep_requests:
            self.request_rows.append(tuple(record[c] for c in REQUEST_COLUMNS))

    # -- frames ---------------------------------------------------------------------------------
    @property
    def steps(self) -> pd.DataFrame:
        """One row per step (empty unless ``keep_steps``), indexed by step number."""
        import pandas as pd

        return pd.DataFrame(self.step_rows, columns=list(STEP_COLUMNS)).set_index("step")

    @property
    def requests(self) -> pd.DataFrame:
        """One row per finished request (empty unless ``keep_requests``)."""
        import pandas as pd

        return pd.DataFrame(self.request_rows, columns=list(REQUEST_COLUMNS))

    def totals(self) -> dict[str, float]:
        """Run totals: every flow summed, final and peak occupancy, hit rates."""
        out: dict[str, float] = {"steps": self.steps_run, "requests": self.requests_done, **self._sums}
        out.update({f"final_{c}": v for c, v in self._last.items()})
        out.update({f"peak_{c}": v for c, v in self._peak.items()})
        prompt = self._sums["prompt_tokens"]
        dev, host = self._sums["device_hit_tokens"], self._sums["host_hit_tokens"]
        out["device_hit_rate"] = dev / prompt if prompt else 0.0
        out["host_hit_rate"] = host / prompt if prompt else 0.0
        out["hit_rate"] = (dev + host) / prompt if prompt else 0.0
        admitted = self._sums["admitted"]
        states = self._sums["state_hits_device"] + self._sums["state_hits_host"]
        out["state_hit_rate"] = states / admitted if admitted else 0.0
        return out

    def totals_frame(self) -> pd.DataFrame:
        """:meth:`totals` as a one-row DataFrame."""
        import pandas as pd

        return pd.DataFrame([self.totals()])


# -- plots ----------------------------------------------------------------------------------------------
def _subplots(nrows: int, title: str, height: float = 2.4):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, 1, figsize=(8, height * nrows), sharex=True, squeeze=False)
    fig.suptitle(title)
    plt.close(fig)
    return fig, [row[0] for row in axes]


def _counts(*axes) -> None:
    """Integer ticks on axes that count things (steps, tokens, states): no 2.5 states."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_occupancy(steps: pd.DataFrame, title: str = "pool occupancy") -> Figure:
    """Device KV, device states, and (if any) host KV and host states over steps: slots in use
    and, on device, slots owned by the tree."""
    host = bool(steps["host_kv_used"].any()) if len(steps) else False
    fig, axes = _subplots(3 if host else 2, title)
    axes[0].plot(steps.index, steps["device_kv_used"], label="in use")
    axes[0].plot(steps.index, steps["device_kv_cached"], label="owned by the tree")
    axes[0].set_ylabel("device KV tokens")
    axes[1].plot(steps.index, steps["device_states_used"], label="in use")
    axes[1].plot(steps.index, steps["device_states_cached"], label="owned by the tree")
    axes[1].set_ylabel("device states")
    if host:
        axes[2].plot(steps.index, steps["host_kv_used"], label="host KV tokens")
        twin = axes[2].twinx()
        twin.plot(steps.index, steps["host_states_used"], color="C3", label="host states")
        twin.set_ylabel("host states")
        axes[2].set_ylabel("host KV tokens")
        _counts(twin)
    _counts(*axes)
    for ax in axes:
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("step")
    return fig


def _x(steps: pd.DataFrame, over: str):
    """The x values and label of a plot over steps or over the engine's clock (seconds)."""
    if over == "step":
        return steps.index, "step"
    if over == "time":
        return steps["time_ms"] / 1000, "time (s, engine clock)"
    raise ValueError(f"over must be 'step' or 'time', got {over!r}")


def plot_hits(steps: pd.DataFrame, window: int = 50, title: str = "prefix reuse", over: str = "step") -> Figure:
    """Rolling hit rates per tier (device matches and host load-backs, as shares of prompt tokens)
    over ``window`` steps, against the step or (``over="time"``) the engine's clock."""
    fig, axes = _subplots(1, title, height=3.2)
    ax = axes[0]
    x, xlabel = _x(steps, over)
    prompt = steps["prompt_tokens"].rolling(window, min_periods=1).sum().where(lambda s: s > 0)
    for col, label in (("device_hit_tokens", "device hits"), ("host_hit_tokens", "host hits (loaded back)")):
        ax.plot(x, steps[col].rolling(window, min_periods=1).sum() / prompt, label=label)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"share of prompt ({window}-step window)")
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_evictions(steps: pd.DataFrame, title: str = "evictions (cumulative)") -> Figure:
    """Cumulative tokens and states evicted per tier, demotions included."""
    fig, axes = _subplots(2, title)
    for col, label in (("evicted_device_tokens", "device KV"), ("demoted_tokens", "of which demoted to host"),
                       ("cascade_device_tokens", "of which by the cascade"), ("evicted_host_tokens", "host KV")):
        axes[0].plot(steps.index, steps[col].cumsum(), label=label)
    axes[0].set_ylabel("tokens")
    for col, label in (("evicted_device_states", "device states"), ("tombstones", "of which tombstoned"),
                       ("evicted_host_states", "host states")):
        axes[1].plot(steps.index, steps[col].cumsum(), label=label)
    axes[1].set_ylabel("states")
    _counts(*axes)
    for ax in axes:
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("step")
    return fig


def plot_transfers(steps: pd.DataFrame, title: str = "bytes moved (cumulative)", over: str = "step",
                   prices: tuple[int, int] | None = None) -> Figure:
    """Cumulative bytes copied device -> host and host -> device, against the step or (``over=
    "time"``) the engine's clock. ``prices`` = (bytes of one KV slot, bytes of one state) counts
    the slots moved at those sizes instead of the pools' own (block mode: a real model's block and
    state, e.g. ``(sizing.block_bytes, sizing.state_bytes)``); then the axis is in GB."""
    fig, axes = _subplots(1, title, height=3.2)
    ax = axes[0]
    x, xlabel = _x(steps, over)
    for way, label in (("device_to_host", "device -> host"), ("host_to_device", "host -> device")):
        if prices is None:
            moved, unit = steps[f"bytes_{way}"] / 2**20, "MiB"
        else:
            moved, unit = (steps[f"kv_slots_{way}"] * prices[0] + steps[f"states_{way}"] * prices[1]) / 1e9, "GB"
        ax.plot(x, moved.cumsum(), label=label)
    ax.set_ylabel(unit)
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_sweep(frame: pd.DataFrame, x: str, y: str = "hit_rate", hue: str | None = None,
               title: str | None = None) -> Figure:
    """One line of ``y`` against ``x`` per value of ``hue`` (a sweep's result frame)."""
    fig, axes = _subplots(1, title or f"{y} by {x}", height=3.6)
    ax = axes[0]
    groups = [(None, frame)] if hue is None else list(frame.groupby(hue, sort=True))
    for key, group in groups:
        g = group.sort_values(x)
        ax.plot(g[x], g[y], marker="o", label=None if hue is None else f"{hue}={key}")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if hue is not None:
        ax.legend(fontsize="small")
    return fig


def plot_policies(frame: pd.DataFrame, ys: tuple[str, ...] = ("hit_rate", "flops_saved"),
                  title: str = "admission x eviction across cache sizes") -> Figure:
    """A policy sweep's frame (:func:`himamba.sim.policy_sweep.policy_sweep`) drawn as one panel
    per column of ``ys`` against the cache size (the sizes in the frame's order, by label), one
    line per (admission, eviction) pair: a colour per admission, a line style per eviction."""
    styles = ("-", "--", ":", "-.")
    labels = list(dict.fromkeys(frame["size"]))
    fig, axes = _subplots(len(ys), title, height=3.0)
    admissions = list(dict.fromkeys(frame["admission"]))
    evictions = list(dict.fromkeys(frame["eviction"]))
    for (admission, eviction), group in frame.groupby(["admission", "eviction"], sort=False):
        x = [labels.index(s) for s in group["size"]]
        for ax, y in zip(axes, ys, strict=True):
            ax.plot(x, group[y], marker="o", color=f"C{admissions.index(admission) % 10}",
                    ls=styles[evictions.index(eviction) % len(styles)], label=f"{admission} + {eviction}")
    names = {"hit_rate": "hit rate", "hit_rate_tokens": "hit rate (tokens)", "flops_saved": "prefill FLOPs saved"}
    for ax, y in zip(axes, ys, strict=True):
        ax.set_ylabel(names.get(y, y.replace("_", " ")))
        ax.set_ylim(bottom=0)
    axes[-1].set_xticks(range(len(labels)), labels)
    axes[-1].set_xlabel("cache size")
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig
