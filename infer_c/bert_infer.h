// BertInference: runs a demo BERT engine (fixed or variable sequence length) with the TensorRT C++
// runtime, optionally replaying the whole enqueue as one CUDA graph.
#pragma once

#include "common.h"
#include "logging.h"

#include <NvInfer.h>
#include <NvInferPlugin.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace demobert
{

// I/O tensor names written by builder.py (fixed length) and builder_varseqlen.py (packed tokens).
constexpr char const* kInputIds = "input_ids";
constexpr char const* kSegmentIds = "segment_ids";
constexpr char const* kInputMask = "input_mask";
constexpr char const* kCuSeqlens = "cu_seqlens";
constexpr char const* kMaxSeqlen = "max_seqlen";
constexpr char const* kLogits = "logits_out";

// A fixed-length engine has exactly these four I/O tensors; a varseqlen engine has five.
constexpr int32_t kFixedLengthIoCount = 4;

struct DeviceBuffer
{
    std::string name;
    UniqueDeviceMemory memory;
    size_t bytes{0};

    void* data() const noexcept
    {
        return memory.get();
    }
};

class BertInference
{
public:
    BertInference(std::string const& enginePath, int32_t maxBatchSize, int32_t seqLength, bool enableGraph)
        : mMaxBatchSize(requirePositive(maxBatchSize, "max batch size"))
        , mSeqLength(requirePositive(seqLength, "sequence length"))
        , mEnableGraph(enableGraph)
    {
        logInfo() << "--------------------";
        logInfo() << "Using BERT inference C++";
        logInfo() << "CUDA Graph is " << (enableGraph ? "enabled" : "disabled");
        logInfo() << "--------------------";

        if (!initLibNvInferPlugins(&gLogger, ""))
        {
            logWarning() << "initLibNvInferPlugins failed; engines that use the BERT plugins will not load";
        }
        loadEngine(enginePath);

        mVariableLength = mEngine->getNbIOTensors() != kFixedLengthIoCount;
        logInfo() << "Variable length is " << (mVariableLength ? "enabled" : "disabled");

        mContext = makeTrtUnique(mEngine->createExecutionContext(), "Error creating execution context");
        allocateBuffers();
    }

    BertInference(BertInference const&) = delete;
    BertInference& operator=(BertInference const&) = delete;

    bool isVariableLength() const noexcept
    {
        return mVariableLength;
    }

    int32_t maxBatchSize() const noexcept
    {
        return mMaxBatchSize;
    }

    int32_t seqLength() const noexcept
    {
        return mSeqLength;
    }

    int32_t preparedBatchSize() const noexcept
    {
        return mBatchSize;
    }

    // Elements of one input array for the prepared batch (the C++ callers' contract for run()).
    size_t inputElementCount() const noexcept
    {
        return static_cast<size_t>(mBatchSize) * mSeqLength;
    }

    // Host copy of the whole output buffer: maxBatch * seqLength * 2 floats, filled by run().
    std::vector<float> const& output() const noexcept
    {
        return mHostOutput;
    }

    // Index of the first optimization profile whose shape range holds `batchSize` sequences.
    int32_t findProfile(int32_t batchSize) const
    {
        for (int32_t profile = 0; profile < mEngine->getNbOptimizationProfiles(); ++profile)
        {
            if (profileCovers(profile, batchSize))
            {
                return profile;
            }
        }
        throw std::runtime_error("None of the dynamic shape profiles meets the requirement batch = "
            + std::to_string(batchSize) + " and sequence = " + std::to_string(mSeqLength) + ".");
    }

    // Makes the context ready for `batchSize` sequences: profile, input shapes, tensor addresses,
    // and, with graphs enabled, a freshly captured graph of one enqueue.
    void prepare(int32_t batchSize)
    {
        if (batchSize < 1 || batchSize > mMaxBatchSize)
        {
            throw std::invalid_argument("batch size " + std::to_string(batchSize) + " is outside 1.."
                + std::to_string(mMaxBatchSize) + " (the max batch size given at construction)");
        }
        int32_t const profile = findProfile(batchSize);
        if (!mContext->setOptimizationProfileAsync(profile, mStream.get()))
        {
            throw std::runtime_error("Error selecting optimization profile " + std::to_string(profile));
        }
        for (DeviceBuffer const& buffer : mBuffers)
        {
            if (isInput(buffer.name) && !mContext->setInputShape(buffer.name.c_str(), inputShape(buffer.name, batchSize)))
            {
                throw std::runtime_error("Error setting the shape of input " + buffer.name);
            }
        }
        if (!mContext->allInputDimensionsSpecified())
        {
            throw std::runtime_error("Not all input dimensions are specified for the execution context");
        }
        // Bound in both modes: enqueueV3 reads the addresses from the context whether or not a
        // graph is captured around it.
        for (DeviceBuffer const& buffer : mBuffers)
        {
            if (!mContext->setTensorAddress(buffer.name.c_str(), buffer.data()))
            {
                throw std::runtime_error("Error binding the address of tensor " + buffer.name);
            }
        }
        if (mVariableLength)
        {
            // Every sequence is taken as full length: cu_seqlens = [0, S, 2S, ..., B*S].
            mCuSeqlens.resize(batchSize + 1);
            for (int32_t i = 0; i <= batchSize; ++i)
            {
                mCuSeqlens[i] = i * mSeqLength;
            }
            CHECK_CUDA(cudaMemcpyAsync(buffer(kCuSeqlens).data(), mCuSeqlens.data(),
                mCuSeqlens.size() * sizeof(int32_t), cudaMemcpyHostToDevice, mStream.get()));
        }
        mBatchSize = batchSize;
        if (mEnableGraph)
        {
            captureGraph();
        }
        CHECK_CUDA(cudaStreamSynchronize(mStream.get()));
    }

    // Copies the inputs (each inputElementCount() int32 values; the mask is unused by varseqlen
    // engines), runs `warmUps` untimed and `iterations` timed inferences, copies the output to the
    // host and returns the GPU time of each timed iteration in milliseconds.
    std::vector<float> run(int32_t const* inputIds, int32_t const* segmentIds, int32_t const* inputMask,
        int32_t warmUps, int32_t iterations)
    {
        if (mBatchSize == 0)
        {
            throw std::logic_error("prepare() must be called before run()");
        }
        size_t const inputBytes = inputElementCount() * sizeof(int32_t);
        copyToDevice(kInputIds, inputIds, inputBytes);
        copyToDevice(kSegmentIds, segmentIds, inputBytes);
        if (!mVariableLength)
        {
            copyToDevice(kInputMask, inputMask, inputBytes);
        }

        logInfo() << "Warming up " << warmUps << " iterations ...";
        for (int32_t i = 0; i < warmUps; ++i)
        {
            launch();
        }
        CHECK_CUDA(cudaStreamSynchronize(mStream.get()));

        logInfo() << "Running " << iterations << " iterations ...";
        std::vector<float> timesMs;
        timesMs.reserve(iterations);
        for (int32_t i = 0; i < iterations; ++i)
        {
            CHECK_CUDA(cudaEventRecord(mStart.get(), mStream.get()));
            launch();
            CHECK_CUDA(cudaEventRecord(mStop.get(), mStream.get()));
            CHECK_CUDA(cudaEventSynchronize(mStop.get()));
            float elapsedMs = 0.F;
            CHECK_CUDA(cudaEventElapsedTime(&elapsedMs, mStart.get(), mStop.get()));
            timesMs.push_back(elapsedMs);
        }

        DeviceBuffer const& logits = buffer(kLogits);
        CHECK_CUDA(
            cudaMemcpyAsync(mHostOutput.data(), logits.data(), logits.bytes, cudaMemcpyDeviceToHost, mStream.get()));
        CHECK_CUDA(cudaStreamSynchronize(mStream.get()));
        return timesMs;
    }

    // Prints the build/perf summary (docs/SPEC.md) of one batch size's timed iterations.
    static void reportTiming(int32_t batchSize, std::vector<float> timesMs)
    {
        if (timesMs.empty())
        {
            logWarning() << "No timed iterations for Batch Size: " << batchSize;
            return;
        }
        size_t const count = timesMs.size();
        float const totalMs = std::accumulate(timesMs.begin(), timesMs.end(), 0.F);
        float const averageMs = totalMs / static_cast<float>(count);
        std::sort(timesMs.begin(), timesMs.end());
        float const p95Ms = timesMs[static_cast<size_t>(static_cast<double>(count) * 0.95)];
        float const p99Ms = timesMs[static_cast<size_t>(static_cast<double>(count) * 0.99)];
        auto const throughput = static_cast<int64_t>(batchSize * 1000.0 / averageMs);

        logInfo() << "Running " << count << " iterations with Batch Size: " << batchSize;
        logInfo() << "\tTotal Time: " << totalMs << " ms ";
        logInfo() << "\tAverage Time: " << averageMs << " ms";
        logInfo() << "\t95th Percentile Time: " << p95Ms << " ms";
        logInfo() << "\t99th Percentile Time: " << p99Ms << " ms";
        logInfo() << "\tThroughput: " << throughput << " sentences/s";
    }

private:
    // Runs in the member initializers, so bad arguments are reported before any CUDA work.
    static int32_t requirePositive(int32_t value, char const* what)
    {
        if (value < 1)
        {
            throw std::invalid_argument(std::string(what) + " must be positive, got " + std::to_string(value));
        }
        return value;
    }

    void loadEngine(std::string const& enginePath)
    {
        logInfo() << "Loading BERT Inference Engine ... ";
        std::ifstream file(enginePath, std::ios::binary);
        if (!file)
        {
            throw std::runtime_error("Error opening engine file: " + enginePath);
        }
        std::vector<char> const blob{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
        mRuntime = makeTrtUnique(nvinfer1::createInferRuntime(gLogger), "Error creating TRT mRuntime");
        mEngine = makeTrtUnique(
            mRuntime->deserializeCudaEngine(blob.data(), blob.size()), "Error deserializing CUDA engine");
        logInfo() << "Done";
    }

    std::vector<char const*> ioTensorNames() const
    {
        if (mVariableLength)
        {
            return {kInputIds, kSegmentIds, kCuSeqlens, kMaxSeqlen, kLogits};
        }
        return {kInputIds, kSegmentIds, kInputMask, kLogits};
    }

    bool isInput(std::string const& name) const
    {
        return mEngine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
    }

    // Shape of an input tensor for `batchSize` full-length sequences.
    nvinfer1::Dims inputShape(std::string const& name, int32_t batchSize) const
    {
        nvinfer1::Dims dims{};
        if (!mVariableLength)
        {
            dims.nbDims = 2;
            dims.d[0] = batchSize;
            dims.d[1] = mSeqLength;
            return dims;
        }
        dims.nbDims = 1;
        if (name == kCuSeqlens)
        {
            dims.d[0] = batchSize + 1;
        }
        else if (name == kMaxSeqlen)
        {
            // Only the length of max_seqlen is read: it is the longest sequence of the batch.
            dims.d[0] = mSeqLength;
        }
        else
        {
            dims.d[0] = static_cast<int64_t>(batchSize) * mSeqLength;
        }
        return dims;
    }

    // Element counts for the largest batch, from which the device buffers are sized.
    size_t maxElementCount(std::string const& name) const
    {
        size_t const tokens = static_cast<size_t>(mMaxBatchSize) * mSeqLength;
        if (name == kLogits)
        {
            return tokens * 2;
        }
        if (name == kCuSeqlens)
        {
            return static_cast<size_t>(mMaxBatchSize) + 1;
        }
        if (name == kMaxSeqlen)
        {
            return static_cast<size_t>(mSeqLength);
        }
        return tokens;
    }

    bool profileCovers(int32_t profile, int32_t batchSize) const
    {
        for (char const* name : ioTensorNames())
        {
            if (!isInput(name))
            {
                continue;
            }
            nvinfer1::Dims const wanted = inputShape(name, batchSize);
            nvinfer1::Dims const declared = mEngine->getTensorShape(name);
            nvinfer1::Dims const lowest = mEngine->getProfileShape(name, profile, nvinfer1::OptProfileSelector::kMIN);
            nvinfer1::Dims const highest = mEngine->getProfileShape(name, profile, nvinfer1::OptProfileSelector::kMAX);
            // A static input (built with one batch size and one length) has no shape range.
            bool const hasRange = lowest.nbDims == wanted.nbDims && highest.nbDims == wanted.nbDims;
            if (declared.nbDims != wanted.nbDims)
            {
                return false;
            }
            for (int32_t axis = 0; axis < wanted.nbDims; ++axis)
            {
                int64_t const extent = wanted.d[axis];
                bool const fits = hasRange ? lowest.d[axis] <= extent && extent <= highest.d[axis]
                                           : declared.d[axis] == extent || declared.d[axis] == -1;
                if (!fits)
                {
                    return false;
                }
            }
        }
        return true;
    }

    void allocateBuffers()
    {
        for (char const* name : ioTensorNames())
        {
            if (mEngine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kNONE)
            {
                throw std::runtime_error(std::string("The engine has no I/O tensor named ") + name
                    + "; was it built by builder.py or builder_varseqlen.py?");
            }
            // int32 inputs and float32 logits are both 4 bytes an element.
            size_t const bytes = maxElementCount(name) * sizeof(int32_t);
            mBuffers.push_back(DeviceBuffer{name, makeZeroedDeviceMemory(bytes), bytes});
        }
        mHostOutput.assign(maxElementCount(kLogits), 0.F);
    }

    DeviceBuffer const& buffer(char const* name) const
    {
        for (DeviceBuffer const& candidate : mBuffers)
        {
            if (candidate.name == name)
            {
                return candidate;
            }
        }
        throw std::logic_error(std::string("no device buffer for tensor ") + name);
    }

    void copyToDevice(char const* name, int32_t const* host, size_t bytes)
    {
        CHECK_CUDA(cudaMemcpyAsync(buffer(name).data(), host, bytes, cudaMemcpyHostToDevice, mStream.get()));
    }

    void enqueue()
    {
        if (!mContext->enqueueV3(mStream.get()))
        {
            throw std::runtime_error("Enqueue failed");
        }
    }

    void launch()
    {
        if (mGraphExec)
        {
            CHECK_CUDA(cudaGraphLaunch(mGraphExec.get(), mStream.get()));
        }
        else
        {
            enqueue();
        }
    }

    void captureGraph()
    {
        mGraphExec.reset();
        // One plain enqueue first: TensorRT does its shape-dependent setup outside the capture.
        enqueue();
        CHECK_CUDA(cudaStreamSynchronize(mStream.get()));

        CHECK_CUDA(cudaStreamBeginCapture(mStream.get(), cudaStreamCaptureModeRelaxed));
        bool const enqueued = mContext->enqueueV3(mStream.get());
        // The capture is ended even when the enqueue failed, or the stream would stay unusable.
        cudaGraph_t rawGraph{nullptr};
        cudaError_t const endStatus = cudaStreamEndCapture(mStream.get(), &rawGraph);
        UniqueGraph const graph(rawGraph);
        if (!enqueued)
        {
            throw std::runtime_error("Enqueue failed");
        }
        CHECK_CUDA(endStatus);
        cudaGraphExec_t graphExec{nullptr};
        CHECK_CUDA(cudaGraphInstantiateWithFlags(&graphExec, graph.get(), 0));
        mGraphExec.reset(graphExec);
    }

    int32_t mMaxBatchSize;
    int32_t mSeqLength;
    bool mEnableGraph;
    bool mVariableLength{false};
    int32_t mBatchSize{0};

    // Declaration order is teardown order reversed: the graph and context go before the buffers
    // and stream they use, the engine and runtime last.
    TrtUniquePtr<nvinfer1::IRuntime> mRuntime;
    TrtUniquePtr<nvinfer1::ICudaEngine> mEngine;
    UniqueStream mStream{makeStream()};
    UniqueEvent mStart{makeEvent()};
    UniqueEvent mStop{makeEvent()};
    std::vector<DeviceBuffer> mBuffers;
    TrtUniquePtr<nvinfer1::IExecutionContext> mContext;
    UniqueGraphExec mGraphExec;

    std::vector<int32_t> mCuSeqlens;
    std::vector<float> mHostOutput;
};

} // namespace demobert
