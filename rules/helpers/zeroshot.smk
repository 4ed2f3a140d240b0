# Helpers of rules/zeroshot.smk (functions only; the rules are there).
from cliplens.core.data.tasks import get_task


def zeroshot_templates(task_name):
    """Format strings of the task's own template set, or of zeroshot.templates."""
    override = S.zeroshot.templates.get(task_name)
    return list(get_task(task_name).resolved_templates(override))


def zeroshot_classnames(task_name):
    """The task's class names when the registry fixes them; None = the dataset's own (read by
    the job once the dataset exists)."""
    names = get_task(task_name).classnames
    return None if names is None or callable(names) else list(names)


def zeroshot_json_paths():
    return expand(
        f"{R}/zeroshot/{{model}}/{{task}}.json",
        model=[model_slug(m) for m in S.zeroshot.models],
        task=S.zeroshot.tasks,
    )
