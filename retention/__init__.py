"""Command line, configuration and embedded runtime of the retention tracker."""
