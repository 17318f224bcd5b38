"""A bound on the nesting of YAML documents (run configs, site configs), torch-free.

PyYAML composes nested collections recursively, so a 100,000-deep list (200 KB) ends in a
``RecursionError`` traceback; its scanner also does work quadratic in the open flow levels. The
composer below counts the depth as it goes and stops at :data:`MAX_YAML_DEPTH`, having scanned
only that far. No LinearScope config nests deeper than 4 levels.
"""

from __future__ import annotations

import yaml

MAX_YAML_DEPTH = 64


class DepthLimited:
    """Mixin for a PyYAML loader: a collection nested deeper than :data:`MAX_YAML_DEPTH` is a
    ``ComposerError`` (a YAMLError: each caller's one-line message names its line)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
