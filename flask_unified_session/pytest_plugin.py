"""pytest plugin (registered through ``pytest11``); inactive unless a test asks for it."""
