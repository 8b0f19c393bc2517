"""Applications over the library: the command line, the web server, video files, Ray."""
