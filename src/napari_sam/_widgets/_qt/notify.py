"""Notices shown as napari notifications: the one place the widgets call them."""

from __future__ import annotations

from napari.utils import notifications

from napari_sam._widgets.notices import ERROR, WARNING, Notice

__all__ = ["show_notice"]


def show_notice(notice: Notice) -> None:
    """Show one notice as a napari notification of its level."""
    if notice.level == ERROR:
        notifications.show_error(notice.text)
    elif notice.level == WARNING:
        notifications.show_warning(notice.text)
    else:
        notifications.show_info(notice.text)
