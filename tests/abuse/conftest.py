"""The abuse tests share tests/test_abuse.py's fixtures: the tiny SD model loaded from a folder
(``sd``), a plan for it (``plan_file``) and the check that the bundled models never change."""

from tests.test_abuse import bundled_unchanged, plan_file, sd  # noqa: F401
