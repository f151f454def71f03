"""Stand-ins shared by the tests of devices, weights and the command line."""

from __future__ import annotations


def constant(value):
    """A stand-in for a torch availability query that always returns ``value``.

    It has ``__wrapped__`` like the cached ``torch.backends.mps.is_available``,
    which ``torch._dynamo`` reads when it is first imported (possibly while patched).
    """

    def query(*args, **kwargs):
        return value

    query.__wrapped__ = query  # type: ignore[attr-defined]
    return query
