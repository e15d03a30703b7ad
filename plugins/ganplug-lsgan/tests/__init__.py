"""Tests of ganplug-lsgan (a package, so its conftest does not shadow the host suite's `conftest`
when both run in one pytest session)."""
