"""Floor 2: what the algorithms tell the outside world (events) and frozen views of the state."""

from himamba.observe.events import Event, EventBus, EventKind
from himamba.observe.recorder import Recorder, Step
from himamba.observe.snapshot import NodeView, Snapshot, diff, take

__all__ = ["Event", "EventBus", "EventKind", "NodeView", "Recorder", "Snapshot", "Step", "diff", "take"]
