"""Getting inputs: hub access, checkpoints and their dtypes, datasets cut into windows."""
