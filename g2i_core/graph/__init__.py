"""Graph algorithms on Spark: GraphFrames when its JAR is attached, else the GraphX bridge."""
