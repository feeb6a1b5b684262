"""The apps: the command line and the web app, thin layers over solve, the registry and events."""
