# Fitroom: `make demo` installs everything and runs a try-on on a sample photo;
# `make test` installs everything and runs the whole test suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out

.PHONY: install models demo test lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@# The reference implementation for parity tests: its own requirements would pull
	@# opencv-contrib, jax and a second OpenCV, so it is installed without them.
	$(BIN)/pip install --quiet --no-deps mediapipe==0.10.21 || echo "mediapipe reference unavailable: parity tests will skip"
	touch $@

install: $(VENV)/.installed

models: install
	$(BIN)/fitroom models build

demo: models
	@mkdir -p $(OUT)
	$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save('$(OUT)/astronaut.png')"
	$(BIN)/fitroom pose $(OUT)/astronaut.png --format body25 --mask-dir $(OUT) --overlay-dir $(OUT) > $(OUT)/astronaut_pose.json
	@echo "pose keypoints (OpenPose BODY_25 JSON): $(OUT)/astronaut_pose.json"
	@echo "skeleton overlay: $(OUT)/astronaut_pose.jpg   person mask: $(OUT)/astronaut_mask.png"
	$(BIN)/fitroom parse $(OUT)/astronaut.png -o $(OUT)/parse --agnostic upper > /dev/null
	@echo "LIP label map: $(OUT)/parse/astronaut.png   agnostic mask (upper): $(OUT)/parse/astronaut_agnostic.png"
	$(BIN)/python -m tests.warp.drawn $(OUT)/tee.png
	$(BIN)/fitroom tryon --person $(OUT)/astronaut.png --garment $(OUT)/tee.png -o $(OUT)/astronaut_tee.jpg --debug $(OUT)/tryon_debug
	@echo "try-on: $(OUT)/astronaut_tee.jpg (the astronaut wearing the drawn tee $(OUT)/tee.png); intermediates: $(OUT)/tryon_debug/"
	@echo "storefront demo page: $(BIN)/fitroom keys create --tenant demo   (prints an API key), then"
	@echo "  FITROOM_DEMO=1 $(BIN)/fitroom serve --port 8000 --workers 2   and open http://127.0.0.1:8000/demo"
	@echo "  (register garments there with 'Add a garment', e.g. $(OUT)/tee.png, or with POST /v1/garments)"

lint: install
	$(BIN)/ruff check services tests bench

test: models lint
	$(BIN)/python -m pytest -q

bench: models
	$(BIN)/python bench/pose_speed.py
	$(BIN)/python bench/parse_speed.py
	$(BIN)/python bench/pose_accuracy.py
	$(BIN)/python bench/parse_accuracy.py
	$(BIN)/python bench/warp_speed.py
	$(BIN)/python bench/warp_accuracy.py
	$(BIN)/python bench/garment_category.py
	$(BIN)/python bench/tryon_speed.py
	$(BIN)/python bench/tryon_quality.py
	$(BIN)/python bench/lower_dress_sheet.py
	$(BIN)/python bench/storefront.py
	$(BIN)/python bench/distributed.py
	@command -v wrk >/dev/null && $(BIN)/python bench/gateway.py || echo "bench/gateway.py needs wrk (apt-get install wrk)"
	@echo "bench/gpu_models.py and bench/train_on_device.sh need a CUDA machine: see their docstrings"

clean:
	rm -rf $(VENV) $(OUT) triton_models/*/1
