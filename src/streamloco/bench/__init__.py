"""`streamloco bench`: the Streaming DiLoCo paper's comparisons, rerun on the demo corpus."""
