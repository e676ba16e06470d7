# The execution string of the panda-docs phpo page ("How to submit HPO tasks"), with its
# CaloImageDNN download and model replaced by run_model.py: train, then tar the MLflow file
# store as the evaluationMetrics tarball and clean up.
export CURRENT_DIR=$PWD
python run_model.py -i input.json --exp_dir $CURRENT_DIR/exp_scalars/
tar cvfz $CURRENT_DIR/metrics.tgz mlruns/*
rm -fr mlruns dataset
ls $CURRENT_DIR/
