#!/usr/bin/python3.9 -I
# SPDX-License-Identifier: Apache-2.0
"""scitagd as the RPM installs it: EL9's python3.9, isolated (-I: no PYTHONPATH, no user site),
with the bundled dependencies in front of the system's."""
import os
import sys

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir,
                                                 "lib", "scitagd", "site-packages")))
from scitagd.cli import main  # noqa: E402

sys.exit(main())
