"""Thin DVC stage entry points: parse params, call the library, write outputs atomically."""
