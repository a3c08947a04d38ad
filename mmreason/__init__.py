"""mmreason."""
