"""Floor 2: what the algorithms tell the outside world (events) and frozen views of the state."""

from himamba.observe.events import Event, EventBus, EventKind

__all__ = ["Event", "EventBus", "EventKind"]
