"""HTTP layer: thin routes that resolve dependencies and call one service function."""
