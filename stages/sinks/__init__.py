"""The Recorder's sinks, one module each: what a finished request feeds (stages/recorder.py runs them)."""
