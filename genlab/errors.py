"""Errors a user can act on. The CLI prints their message and exits with `exit_code`."""


class GenlabError(Exception):
    """A problem with the user's input or files; the message names the problem and the fix."""

    exit_code = 1


class UsageError(GenlabError):
    """Unknown family, dataset, sampler, config key, or a badly typed value (exit code 2)."""

    exit_code = 2


def unknown(kind: str, name: str, choices) -> UsageError:
    """`UsageError("unknown dataset 'fmnist'; expected one of: digits, fashion-mnist, ...")`."""
    choices = sorted(choices)
    return UsageError(f"unknown {kind} '{name}'; expected one of: {', '.join(choices)}")
