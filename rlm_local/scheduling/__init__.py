"""Scheduling: one scheduler per engine (``scheduler``), shared process-wide (``registry``), and the prefix
layout that lets engines compute a shared prefix once (``prefix``)."""
