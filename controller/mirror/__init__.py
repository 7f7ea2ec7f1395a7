"""The SQL mirror (DESIGN.md section 6): every WAAccount as a row applications read."""

from controller.mirror.service import Mirror
from controller.mirror.store import ApplicationStore, MirrorStore, engine_for, upgrade

__all__ = ["ApplicationStore", "Mirror", "MirrorStore", "engine_for", "upgrade"]
