"""tests/dbs.py's on_each_engine: one storage test mixin becomes a SQLite and a PostgreSQL case."""

from __future__ import annotations

import sys
import types
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import dbs
from tests.dbs import on_each_engine


class OnEachEngineTests(SynchronousTestCase):
    def module(self) -> types.ModuleType:
        """A test module of its own, as the decorator adds the cases beside the mixin."""
        module = types.ModuleType(f"tests.storage_tests_{len(sys.modules)}")
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__)
        return module

    def mixin(self, module: types.ModuleType, name: str, *bases: type) -> Any:
        return type(name, bases, {"__module__": module.__name__, "test_it": lambda self: None})

    def test_one_case_per_engine(self) -> None:
        """XTestsMixin and XMixin give SqliteXTests and PostgresXTests, each on its engine."""
        for name in ("ThingTestsMixin", "ThingMixin"):
            module = self.module()
            mixin = on_each_engine(self.mixin(module, name))
            for case_name, engine in (
                ("SqliteThingTests", "sqlite"),
                ("PostgresThingTests", "postgresql"),
            ):
                case = getattr(module, case_name)
                self.assertTrue(issubclass(case, mixin) and issubclass(case, TestCase))
                self.assertEqual(case.engine_name, engine)
                self.assertEqual((case.__module__, case.__qualname__), (module.__name__, case_name))
            self.assertFalse(hasattr(module.SqliteThingTests, "skip"))

    def test_postgres_skipped_without_dsn(self) -> None:
        """The PostgreSQL case is skipped, naming SECMAIL_TEST_POSTGRES, until that is set."""
        self.patch(dbs, "POSTGRES_DSN", "")
        module = self.module()
        on_each_engine(self.mixin(module, "ThingMixin"))
        self.assertIn("SECMAIL_TEST_POSTGRES", module.PostgresThingTests.skip)
        self.patch(dbs, "POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        module = self.module()
        on_each_engine(self.mixin(module, "ThingMixin"))
        self.assertFalse(hasattr(module.PostgresThingTests, "skip"))

    def test_refuses_test_case_and_taken_name(self) -> None:
        """A mixin that is a TestCase, or a case name already in the module, is an error."""
        module = self.module()
        with self.assertRaises(TypeError):
            on_each_engine(self.mixin(module, "ThingMixin", TestCase))
        module.SqliteThingTests = object()  # type: ignore[attr-defined]
        with self.assertRaises(TypeError):
            on_each_engine(self.mixin(module, "ThingMixin"))
