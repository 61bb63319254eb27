"""Built-in plugin: the synthetic long-dependency tasks (docs/tasks.md)."""

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
    register("selective_copy", "harness.tasks.selective_copy:SelectiveCopy",
             description="Selective copy: name 4 tokens scattered among T blanks, in order (Gu & Dao 2023); "
                         "options tokens, vocab_size.")
    register("mqar", "harness.tasks.mqar:MultiQueryRecall",
             description="Multi-query associative recall: give the value of each of 4 keys, asked T steps or more "
                         "after its pair (Arora et al. 2023); options pairs, keys, values.")
