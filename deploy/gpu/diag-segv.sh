source .debs/device-env.sh .debs >/dev/null
export GPTQ_TEST_DATA_ROOT="$PWD/.gpu-data"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPTQ_BUILD_SERVER=OFF -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" $DEVICE_CMAKE_ARGS > /dev/null 2>&1 || exit 1
cmake --build build-gpu -j 16 --target runtime_gpu_test 2>&1 | grep -E "error" | head
readelf -d build-gpu/bin/runtime_gpu_test | grep NEEDED
cuda-gdb -batch -ex run -ex 'x/4gx $sp' -ex 'info symbol *(long*)$sp' -ex 'info symbol *(long*)($sp+8)' -ex 'info symbol *(long*)($sp+16)' -ex 'frame 0' -ex 'up' -ex 'bt 15' --args ./build-gpu/bin/runtime_gpu_test --gtest_filter='*TinyJob*' 2>&1 | grep -vE "^\[New|^\[Thread|Detaching" | tail -40
