"""Pipeline stages, one module each, plus the routing maths they use."""
