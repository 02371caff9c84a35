# SPDX-License-Identifier: Apache-2.0
"""Every exception scitagd raises on purpose, in one tree, so that callers catch by meaning.

    ScitagdError
    ├── InputError (ValueError)        input from outside is invalid; `field` and `reason` say
    │   │                              which input and give a counter label
    │   ├── TagError                   an experiment/activity id or wire form out of range
    │   ├── EventError                 a flow event field (API body, named-pipe line, firefly)
    │   ├── FireflyError               a datagram that is not a usable firefly
    │   ├── RegistryError              a registry document, or a name it does not hold
    │   └── ParamError                 an HTTP query parameter
    ├── ConfigError (ValueError)       the configuration file: unreadable, not YAML, bad key
    ├── StartupError (RuntimeError)    a configured component cannot start
    ├── CommandError                   a CLI command cannot do what it was asked (no maps, ...)
    └── BpfError (OSError)             a libbpf call failed; `errno` says why
        └── LibbpfMissing              no usable libbpf.so.1 on this host

The CLI turns any ScitagdError into one `scitagd: error: ...` line and exit status 2.
"""

from __future__ import annotations

__all__ = [
    "BpfError",
    "CommandError",
    "ConfigError",
    "EventError",
    "FireflyError",
    "InputError",
    "LibbpfMissing",
    "ParamError",
    "RegistryError",
    "ScitagdError",
    "StartupError",
    "TagError",
]


class ScitagdError(Exception):
    """Base of every error scitagd raises on purpose."""


class InputError(ScitagdError, ValueError):
    """Invalid input. `field` names the input's own field (None: the whole input); `reason` is a
    short label for counters (`scitagd_rejected_total{reason=...}`)."""

    def __init__(self, message: str, reason: str = "invalid", field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class TagError(InputError):
    """An id or wire value out of range; the message says which value and what was expected."""

    def __init__(self, message: str, reason: str = "bad_tag", field: str | None = None) -> None:
        super().__init__(message, reason, field)


class EventError(InputError):
    """A flow event field; the message starts with the field's name as the input spells it."""

    def __init__(self, field: str, message: str, reason: str = "invalid") -> None:
        super().__init__(f"{field}: {message}", reason, field)


class FireflyError(InputError):
    """A datagram or archive line that is not a usable firefly."""

    def __init__(self, message: str, reason: str, field: str | None = None) -> None:
        super().__init__(message, reason, field)


class RegistryError(InputError):
    """A registry document that cannot be used, or a name it does not hold."""

    def __init__(self, message: str, reason: str = "unknown_name", field: str | None = None) -> None:
        super().__init__(message, reason, field)


class ParamError(InputError):
    """An HTTP query parameter; `field` is the parameter's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}", "bad_param", name)

    @property
    def name(self) -> str:
        return self.field or ""


class ConfigError(ScitagdError, ValueError):
    """The configuration: the message leads with the file and the key path."""


class StartupError(ScitagdError, RuntimeError):
    """A configured component cannot start; the message names its config section."""


class CommandError(ScitagdError):
    """A CLI command cannot do what it was asked."""


class BpfError(ScitagdError, OSError):
    """A libbpf call failed (libbpf returns -errno); `errno` and `strerror` are set."""


class LibbpfMissing(BpfError):
    """No usable libbpf.so.1 (>= 1.0); the message names the package to install."""
