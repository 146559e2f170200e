"""Small shared pieces every stage may use: safe output directories, child processes, trust checks."""
