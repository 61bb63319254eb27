"""Built-in plugin: the three synthetic long-dependency tasks (docs/tasks.md)."""

from harness import hookimpl


@hookimpl
def register_tasks(register):
    register("copy", "harness.tasks.copy_memory:CopyMemory",
             description="Copy memory: reproduce 10 symbols after a gap of T steps (Arjovsky et al. 2016).")
    register("adding", "harness.tasks.adding:AddingProblem", default_sweep=True,
             description="Adding problem: sum the two marked values of a length-T sequence (Hochreiter 1997).")
    register("recall", "harness.tasks.recall:LongGapRecall",
             description="Long-gap recall: name the key seen T distractors before the query (Hochreiter 1997); "
                         "key_position=middle puts it in the middle of 2T distractors.")
