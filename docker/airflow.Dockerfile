# Airflow scheduler / api-server / dag-processor / workers for g2i.
# Workers run Spark stages as spark-submit in client mode (the driver runs here), so the image carries a
# JRE, pyspark 3.5 and the project's jars; GPU stages run elsewhere (trainer image) under the kubernetes
# profile, so torch is NOT installed here (the local profile on a CPU worker needs the `ml` extra).
#   docker build -f docker/airflow.Dockerfile -t g2i-airflow:dev .
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64

USER airflow
WORKDIR /opt/g2i
COPY --chown=airflow:root pyproject.toml constraints.txt README.md ./
COPY --chown=airflow:root g2i_core ./g2i_core
COPY --chown=airflow:root jobs ./jobs
COPY --chown=airflow:root jvm ./jvm
COPY --chown=airflow:root scripts/setup.sh ./scripts/setup.sh
# g2i + Spark client + Kubernetes provider, pinned by the project's constraints (Airflow itself comes
# from the base image and must not be upgraded by this step).
RUN pip install --no-cache-dir -c constraints.txt "pyspark==3.5.7" graphframes-py pyarrow boto3 pillow numpy \
        scipy tqdm psutil apache-airflow-providers-cncf-kubernetes \
    && pip install --no-cache-dir --no-deps -e .
# Jars (hadoop-aws, AWS SDK bundle, GraphX bridge) into /opt/g2i/.local/jars; G2I_JARS_DIR points at them.
RUN JARS=/opt/g2i/.local/jars && mkdir -p $JARS .build/jvm \
    && SPARK_JARS=$(python -c "import pyspark,os;print(os.path.join(os.path.dirname(pyspark.__file__),'jars'))") \
    && mvn -q -B dependency:copy -Dartifact=org.apache.hadoop:hadoop-aws:3.3.4 -DoutputDirectory=$JARS \
    && mvn -q -B dependency:copy -Dartifact=com.amazonaws:aws-java-sdk-bundle:1.12.262 -DoutputDirectory=$JARS \
    && javac -nowarn -source 17 -target 17 -cp "$SPARK_JARS/*" -d .build/jvm jvm/src/g2i/*.java \
    && jar cf $JARS/g2i-graphx-bridge.jar -C .build/jvm . && rm -rf ~/.m2 .build
ENV G2I_JARS_DIR=/opt/g2i/.local/jars \
    G2I_SPARK_LOCAL_DIR=/tmp/spark \
    PYSPARK_PYTHON=python \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/g2i/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
COPY --chown=airflow:root dags ./dags
