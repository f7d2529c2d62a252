"""The engines that run the one data path: the simulator (``sim``)."""
