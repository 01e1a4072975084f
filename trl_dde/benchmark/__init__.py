"""The offline credit-assignment benchmark behind ``trl-dde demo``: a procedural world (``world``) and its
programmatic preference (``preference``)."""
