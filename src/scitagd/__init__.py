# SPDX-License-Identifier: Apache-2.0
"""scitagd: SciTags flow and packet marking daemon."""

__version__ = "0.1.0"
