"""Text sets (:mod:`.textsets`) and the one zero-shot classifier builder (:mod:`.zeroshot`)."""
