"""Automatic segmentation without Qt: the controller and its parts (see ``controller``)."""
