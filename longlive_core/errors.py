"""Exception types of the engine. Every message names the field or file and the fix."""


class LongLiveError(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(LongLiveError):
    """A model or LoRA file cannot be used: wrong format, family, keys or a damaged file."""


class ConfigError(LongLiveError, ValueError):
    """A session or model setting is out of range or inconsistent."""


class PromptError(LongLiveError, ValueError):
    """Prompt embeddings or a prompt schedule do not fit the session."""


class RunEndingError(LongLiveError):
    """A request for a live run that no longer takes it: the run was stopped, or its last block is made."""


class BackendUnavailableError(LongLiveError, RuntimeError):
    """An attention backend or precision option was asked for but cannot run here."""


class EngineLoadedTwiceError(LongLiveError, ImportError):
    """A second copy of the engine is being imported into a process that has one (its torch ops would collide)."""
