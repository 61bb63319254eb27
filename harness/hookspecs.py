"""Hook specifications: the whole surface a plugin can implement.

Each hook receives a ``register`` callback owned by the core, so the core decides naming,
duplicate checks and which plugin provided what (the pattern of simonw/llm).
"""

import pluggy

hookspec = pluggy.HookspecMarker("harness")


@hookspec
def register_models(register):
    """Register recurrent models: ``register(name, target, description=..., aliases=(), defaults={})``.

    ``target`` is a ``"module:attr"`` string (imported only when the model is built, so listing
    models never imports torch) or a callable. Calling it as
    ``target(input_size=..., hidden_size=..., **options)`` returns a ``torch.nn.Module`` that
    follows the model contract in ``harness.model_api``.
    """


@hookspec
def register_tasks(register):
    """Register tasks: ``register(name, target, description=..., aliases=(), defaults={})``.

    ``target`` is a ``"module:attr"`` string or a callable; ``target(length=T, **options)``
    returns a ``harness.task_api.Task``.
    """
