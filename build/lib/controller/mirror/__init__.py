"""The SQL mirror (DESIGN.md section 6): every WAAccount as a row applications read."""

from controller.mirror.service import Mirror
from controller.mirror.store import MirrorStore, engine_for, upgrade

__all__ = ["Mirror", "MirrorStore", "engine_for", "upgrade"]
