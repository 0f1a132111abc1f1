# aperture: the two commands of the Quick start, and the developer targets around them.
#   make run    install missing packages, build, preprocess the drawn sample images
#   make test   install, build twice (normal and ASan+UBSan), run every test in both
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
FUZZ_SECONDS ?= 60
PY         := /usr/bin/python3
CMAKE_GEN  := -G Ninja

.PHONY: all build run test test-quick fuzz bench format checksrc clean

all: build

build:
	@scripts/deps.sh build
	@cmake -S . -B $(BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@ninja -C $(BUILD)

# Preprocess the drawn samples (the summary table shows what the pipeline saves), then start
# the gateway on the embedded default: the offline `local` provider, no key needed.
run: build
	@scripts/deps.sh test
	@$(PY) scripts/make_samples.py samples
	@mkdir -p samples/out
	$(BUILD)/aperture prep samples/*.jpg samples/*.png samples/*.webp --out-dir samples/out
	@echo
	@echo "gateway: try  curl -s localhost:8080/v1/analyze -F image=@samples/document_a4.png -F task=invoice_extraction"
	$(BUILD)/aperture serve $(if $(CONFIG),--config $(CONFIG),)

# Quick tier: the normal build only.
test-quick:
	@scripts/deps.sh test
	@cmake -S . -B $(BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@ninja -C $(BUILD)
	@cd $(BUILD) && ctest --output-on-failure --no-tests=error -j$(JOBS)

# Full tier: every test in the normal build, then again under ASan+UBSan (which also replays
# the fuzz corpus). The last line is ctest's summary of the sanitizer run.
test: test-quick
	@cmake -S . -B $(ASAN_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug -DAPERTURE_SANITIZE=ON >/dev/null
	@ninja -C $(ASAN_BUILD)
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure --no-tests=error -j$(JOBS)

# libFuzzer over ap_prep, seeded from the corpus, for FUZZ_SECONDS (clang).
fuzz:
	@scripts/deps.sh test
	@CC=clang cmake -S . -B $(FUZZ_BUILD) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAPERTURE_FUZZ=ON -DAPERTURE_TESTS=OFF >/dev/null
	@ninja -C $(FUZZ_BUILD) fuzz_prep
	@scripts/fuzz.sh $(FUZZ_BUILD)/fuzz_prep $(FUZZ_SECONDS)

bench: build
	@scripts/deps.sh bench
	@bench/run.sh $(BUILD)/aperture

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

checksrc:
	@scripts/checksrc.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) samples
