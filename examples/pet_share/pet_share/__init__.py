"""An example of a task of one's own for petlab: the share of the photo that is the pet (see README.md).

Nothing here is imported by this file: petlab imports ``pet_share.task`` when a config or (with
``plugins=[pet_share]``) a checkpoint names it, and an exported page imports ``pet_share.answers`` alone.
"""
