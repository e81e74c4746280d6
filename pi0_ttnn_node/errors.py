"""Errors raised by the pi0_ttnn_node core.

Every message says what was wrong, the value seen, what was expected and what to do next.
The ROS layer catches `Pi0Error` in lifecycle transitions and reports it; anything else is a bug.
"""


class Pi0Error(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigError(Pi0Error, ValueError):
    """A model, policy or node configuration is invalid."""


class CheckpointError(Pi0Error):
    """A checkpoint directory or file is missing, unsafe, or does not match the configuration."""


class TokenizerError(Pi0Error):
    """The tokenizer model is missing or unusable."""


class ObservationError(Pi0Error, ValueError):
    """An observation (image, state, instruction) cannot be turned into model inputs."""


class BackendUnavailableError(Pi0Error):
    """The requested backend or device cannot be used on this machine."""


class InferenceError(Pi0Error):
    """A backend produced an unusable result (non-finite values, wrong shape) or failed."""


class ObservationRejected(ObservationError):
    """One input or observation was refused; `reason` is a stable key for diagnostics counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
