"""What every route shares: the runs it may show, loaded models, sessions, the job slots and
the caps."""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import Catalog
from .generation import Slots
from .limits import Limits
from .models import ModelCache
from .sessions import SessionStore


@dataclass
class Context:
    catalog: Catalog
    limits: Limits
    device: str
    models: ModelCache = field(init=False)
    sessions: SessionStore = field(init=False)
    slots: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.models = ModelCache(self.device, self.limits.max_models)
        self.sessions = SessionStore(self.limits.max_sessions, self.limits.session_idle_s)
        self.slots = Slots(self.limits.max_concurrent)
