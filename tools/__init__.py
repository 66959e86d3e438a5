"""Generators run by developers, not shipped in the skill folder: the method catalog
(``python -m tools.build_catalog``) and the ``references/`` pages
(``python -m tools.build_references``)."""
