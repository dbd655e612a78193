package g2i;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.graphx.Edge;
import org.apache.spark.graphx.Graph;
import org.apache.spark.graphx.lib.ConnectedComponents;
import org.apache.spark.graphx.lib.PageRank;
import org.apache.spark.ml.linalg.SparseVector;
import org.apache.spark.ml.linalg.Vector;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.storage.StorageLevel;

import scala.Tuple2;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

/**
 * GraphX algorithms exposed to PySpark over py4j, for clusters where the GraphFrames JAR cannot be
 * installed. GraphFrames' connectedComponents (graphx algorithm) and parallelPersonalizedPageRank
 * are thin wrappers over these same GraphX routines, so results match.
 *
 * Vertex ids are longs: the Python side indexes string node ids before calling in.
 */
public final class GraphXBridge {
    private GraphXBridge() {}

    private static final ClassTag<Object> ANY = ClassTag$.MODULE$.apply(Object.class);

    private static Graph<Object, Object> graphFromEdges(Dataset<Row> edges) {
        // edges: columns (src long, dst long)
        JavaRDD<Edge<Object>> rdd = edges.select("src", "dst").javaRDD()
            .map(r -> new Edge<Object>(r.getLong(0), r.getLong(1), (Object) Double.valueOf(1.0)));
        return Graph.fromEdges(rdd.rdd(), (Object) Long.valueOf(0L),
            StorageLevel.MEMORY_AND_DISK(), StorageLevel.MEMORY_AND_DISK(), ANY, ANY);
    }

    /** Returns (id long, component long): the smallest vertex id in each weakly connected component. */
    public static Dataset<Row> connectedComponents(SparkSession spark, Dataset<Row> edges, int maxIterations) {
        Graph<Object, Object> cc = ConnectedComponents.run(graphFromEdges(edges), maxIterations, ANY, ANY);
        JavaRDD<Row> rows = cc.vertices().toJavaRDD()
            .map(t -> RowFactory.create(((Number) t._1()).longValue(), ((Number) t._2()).longValue()));
        StructType schema = new StructType()
            .add("id", DataTypes.LongType, false)
            .add("component", DataTypes.LongType, false);
        return spark.createDataFrame(rows, schema);
    }

    /**
     * GraphX parallel personalized PageRank for a batch of sources.
     * Returns (source long, node long, score double) for every non-zero entry.
     */
    public static Dataset<Row> parallelPersonalizedPageRank(
            SparkSession spark, Dataset<Row> edges, long[] sources, double resetProb, int numIterations) {
        Graph<Vector, Object> ranks = PageRank.runParallelPersonalizedPageRank(
            graphFromEdges(edges), numIterations, resetProb, sources, ANY, ANY);
        final long[] src = sources.clone();
        JavaRDD<Row> rows = ranks.vertices().toJavaRDD().flatMap(t -> {
            long node = ((Number) t._1()).longValue();
            SparseVector v = t._2().toSparse();
            List<Row> out = new ArrayList<>(v.indices().length);
            for (int k = 0; k < v.indices().length; k++) {
                out.add(RowFactory.create(src[v.indices()[k]], node, v.values()[k]));
            }
            return out.iterator();
        });
        StructType schema = new StructType()
            .add("source", DataTypes.LongType, false)
            .add("node", DataTypes.LongType, false)
            .add("score", DataTypes.DoubleType, false);
        return spark.createDataFrame(rows, schema);
    }
}
