"""Start ``phpo.server`` with the benchmarks' proposed hot-path fixes applied in memory, to
measure them before the code owners take them (``--proposed-fixes`` of the benchmark scripts).

Nothing on disk changes: each fix is a textual edit of one function's current source, compiled
in that function's module (``PHPO_BENCH_FIXES=F1,F2`` picks some). A fix whose original text is no longer there (already applied, or
the code moved on) is skipped with a line on stderr, so a stale fix can never run.

F1 ``server/services/job_broker.py`` ``JobBroker._acquire_evaluation``: the candidate query
   selected ``TaskRow.spec`` (a JSON column) once per candidate segment, so every acquire
   decoded the task's whole spec S times - and a segmented spec holds the S segments, so one
   acquire cost O(S^2) (150 ms at S = 300). ``JobBroker.info`` already caches the parsed spec
   per task and reads it itself on a miss, so the query needs only the segment ids.
F2 ``server/services/hpo_manager.py`` ``_tell_new``, ``_store_points``, ``_opt_state``: each
   steering iteration of a segment re-read and re-validated the task spec (twice), O(S) per
   iteration and so O(S^2) per task; ``HpoManager._spec`` (the per-task cache ``_pass`` already
   uses) serves them, and ``_store_points`` locks the task row without loading its spec.
F3 ``schemas/tasks.py`` ``TaskSpec._check``: the duplicate-name check ``names.count(n)`` for
   every name is O(S^2) (2.6 ms of the 3.1 ms it takes to validate a 300-segment spec, which
   the server does on every ``GET /tasks/{id}``); a Counter makes it O(S).
F4 ``server/services/job_broker.py`` ``JobBroker._acquire_steering``: every acquire of an agent
   that also takes steering jobs (the default) opened a write transaction - on SQLite the
   process-wide write lock plus ``BEGIN IMMEDIATE`` - to look for queued steering jobs, which
   are rare; a read first returns at once when there is none.
F5 ``server/services/hpo_manager.py`` ``HpoManager._run``: a pass runs on every wake, and both
   ``/result`` and ``/complete`` wake it, so with 16 busy slots the manager re-reads the counts
   of every running task (a GROUP BY over their points) twice per evaluation; waiting 20 ms
   after a pass lets the results of those 20 ms share the next one.
"""

from __future__ import annotations

import inspect
import os
import sys
import textwrap

_CACHED_SPEC = ("self._specs.get(task_id) or self._spec(task_id, s.execute(select(TaskRow.spec)"
                ".where(TaskRow.id == task_id)).scalar_one())")

FIXES = [
    ("F1", "phpo.server.services.job_broker", "JobBroker", "_acquire_evaluation", [
        ("select(SegmentRow.id, SegmentRow.task_id, TaskRow.spec)", "select(SegmentRow.id, SegmentRow.task_id)"),
        ("for sid, tid, spec in cands:", "for sid, tid in cands:"),
        ("info = self.info(s, tid, spec)", "info = self.info(s, tid)"),
    ]),
    ("F2", "phpo.server.services.hpo_manager", "HpoManager", "_tell_new", [
        ("spec = TaskSpec.model_validate(s.execute(select(TaskRow.spec).where(TaskRow.id == task_id)).scalar_one())",
         f"spec = {_CACHED_SPEC}"),
    ]),
    ("F2", "phpo.server.services.hpo_manager", "HpoManager", "_store_points", [
        ("task = s.execute(select(TaskRow).where(TaskRow.id == task_id)",
         ("task = s.execute(select(TaskRow).options(__import__('sqlalchemy.orm').orm.defer(TaskRow.spec))"
          ".where(TaskRow.id == task_id)")),
        ("spec = TaskSpec.model_validate(task.spec)", "spec = self._specs.get(task_id) or self._spec(task_id, task.spec)"),
    ]),
    ("F2", "phpo.server.services.hpo_manager", "HpoManager", "_opt_state", [
        ("task = s.get(TaskRow, task_id)", "task = None"),
        ("spec = TaskSpec.model_validate(task.spec)", f"spec = {_CACHED_SPEC}"),
    ]),
    ("F4", "phpo.server.services.job_broker", "JobBroker", "_acquire_steering", [
        ("with self.db.write() as s:",
         ("with self.db.read() as r:\n"  # indentation as in the dedented method
          "        if r.execute(select(JobRow.id).where(JobRow.kind == 'steering', JobRow.state == 'queued')"
          ".limit(1)).first() is None:\n"
          "            return None\n"
          "    with self.db.write() as s:")),
    ]),
    ("F5", "phpo.server.services.hpo_manager", "HpoManager", "_run", [
        ("self._wake.wait(self.settings.manager_interval)",
         "self._stop.wait(0.02)\n        self._wake.wait(self.settings.manager_interval)"),
    ]),
    ("F3", "phpo.schemas.tasks", "TaskSpec", "_check", [
        ("dup = sorted({n for n in names if names.count(n) > 1})",
         "dup = sorted(n for n, k in __import__('collections').Counter(names).items() if k > 1)"),
    ]),
]


def apply() -> list[str]:
    import importlib

    applied = []
    # PHPO_BENCH_FIXES=F1,F3 applies only those (to weigh each fix); default all
    only = {x.strip() for x in os.environ.get("PHPO_BENCH_FIXES", "").split(",") if x.strip()}
    for fix_id, module_name, cls_name, fn_name, edits in FIXES:
        if only and fix_id not in only:
            continue
        module = importlib.import_module(module_name)
        cls = getattr(module, cls_name)
        validator = getattr(cls, "__pydantic_decorators__", None)
        validator = validator.model_validators.get(fn_name) if validator is not None else None
        func = validator.func if validator is not None else getattr(cls, fn_name)
        src = textwrap.dedent(inspect.getsource(func))
        if not all(old in src for old, _ in edits):
            print(f"proposed fix {cls_name}.{fn_name}: source changed or already fixed; not applied",
                  file=sys.stderr)
            continue
        for old, new in edits:
            src = src.replace(old, new)
        src = "\n".join(line for line in src.splitlines() if not line.startswith("@"))  # drop decorators
        namespace: dict = {}
        exec(compile(src, inspect.getsourcefile(module) or module_name, "exec"), module.__dict__, namespace)  # noqa: S102
        if validator is not None:  # a pydantic validator: swap the function and rebuild the model
            validator.func = namespace[fn_name]
            cls.model_rebuild(force=True)
        else:
            setattr(cls, fn_name, namespace[fn_name])
        applied.append(f"{fix_id} {cls_name}.{fn_name}")
    print(f"proposed fixes applied: {', '.join(applied) or 'none'}", file=sys.stderr)
    return applied


if __name__ == "__main__":
    apply()
    from phpo.server.cli import main

    sys.exit(main(sys.argv[1:]))
