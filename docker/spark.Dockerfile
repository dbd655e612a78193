# Spark master / worker / executor image for g2i jobs on a cluster (standalone or Spark on Kubernetes).
# Executors run g2i's Python (Arrow parsers, UDF-free DataFrame code), so g2i_core is installed here
# with the same pyspark version as the driver (the Airflow worker image).
#   docker build -f docker/spark.Dockerfile -t g2i-spark:dev .
FROM apache/spark:3.5.7-scala2.12-java17-python3-ubuntu

USER root
RUN apt-get update && apt-get install -y --no-install-recommends maven && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/g2i
COPY pyproject.toml constraints.txt README.md ./
COPY g2i_core ./g2i_core
COPY jobs ./jobs
COPY jvm ./jvm
RUN pip3 install --no-cache-dir -c constraints.txt pyarrow boto3 pillow numpy scipy psutil graphframes-py \
    && pip3 install --no-cache-dir --no-deps -e .
# hadoop-aws + AWS SDK + the GraphX bridge on Spark's own classpath (no --jars needed on executors).
RUN mvn -q -B dependency:copy -Dartifact=org.apache.hadoop:hadoop-aws:3.3.4 -DoutputDirectory=/opt/spark/jars \
    && mvn -q -B dependency:copy -Dartifact=com.amazonaws:aws-java-sdk-bundle:1.12.262 -DoutputDirectory=/opt/spark/jars \
    && mkdir -p /tmp/bridge && javac -nowarn -source 17 -target 17 -cp "/opt/spark/jars/*" -d /tmp/bridge jvm/src/g2i/*.java \
    && jar cf /opt/spark/jars/g2i-graphx-bridge.jar -C /tmp/bridge . && rm -rf /tmp/bridge /root/.m2
COPY infra/spark/spark-defaults.conf /opt/spark/conf/spark-defaults.conf
ENV PYSPARK_PYTHON=python3
USER spark
