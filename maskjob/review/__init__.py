"""Human review of the model's faces: the review web page (``app``, ``auth``, ``security``,
``crops``, ``items``) and the export of corrections into training data (``export``,
``labelstudio``). Nothing is imported here: each module is imported where it is used."""

__all__: list[str] = []
