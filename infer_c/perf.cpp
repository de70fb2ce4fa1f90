// build/perf: latency benchmark of a demo BERT engine on random inputs, one run per -b value.
#include "bert_infer.h"

#include <NvInferVersion.h>
#include <getopt.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

using demobert::BertInference;

// Size of the uncased BERT vocabulary the random token ids are drawn from.
constexpr int32_t kVocabSize = 30522;

struct PerfOptions
{
    std::string enginePath;
    std::vector<int32_t> batchSizes;
    int32_t sequenceLength{128};
    int32_t iterations{200};
    int32_t warmUpRuns{10};
    uint32_t randomSeed{12345};
    bool enableGraph{false};
};

void printUsage(std::ostream& out)
{
    out << "usage: ./perf [-h] [-e ENGINE] [-b BATCH_SIZE] [-s SEQUENCE_LENGTH]\n"
           "              [-i ITERATIONS] [-w WARM_UP_RUNS] [-r RANDOM_SEED] [--enable_graph]\n"
           "\n"
           "Latency benchmark of a BERT engine on random inputs.\n"
           "\n"
           "options:\n"
           "  -h, --help            show this help message and exit\n"
           "  -e, --engine          path of the engine to benchmark (required)\n"
           "  -b, --batch_size      batch size to run; repeat for several (default: 1)\n"
           "  -s, --sequence_length sequence length of every input (default: 128)\n"
           "  -i, --iterations      number of timed iterations per batch size (default: 200)\n"
           "  -w, --warm_up_runs    number of untimed runs before timing (default: 10)\n"
           "  -r, --random_seed     seed of the random inputs (default: 12345; --ramdon_seed is an alias)\n"
           "  -g, --enable_graph    replay each inference as one CUDA graph (default: off)\n";
}

class UsageError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

int64_t parseInteger(char const* optionName, char const* text, int64_t lowest, int64_t highest)
{
    char* end = nullptr;
    errno = 0;
    long long const value = std::strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < lowest || value > highest)
    {
        throw UsageError(std::string("--") + optionName + " expects an integer in [" + std::to_string(lowest) + ", "
            + std::to_string(highest) + "], got '" + text + "'");
    }
    return value;
}

int32_t parseCount(char const* optionName, char const* text, int64_t lowest)
{
    return static_cast<int32_t>(parseInteger(optionName, text, lowest, INT32_MAX));
}

PerfOptions parseOptions(int argc, char* argv[])
{
    // Every option but the two flags takes an argument, in both its short and long form.
    static option const longOptions[] = {
        {"help", no_argument, nullptr, 'h'},
        {"engine", required_argument, nullptr, 'e'},
        {"batch_size", required_argument, nullptr, 'b'},
        {"sequence_length", required_argument, nullptr, 's'},
        {"iterations", required_argument, nullptr, 'i'},
        {"warm_up_runs", required_argument, nullptr, 'w'},
        {"random_seed", required_argument, nullptr, 'r'},
        // The original spelling, kept so existing command lines still work.
        {"ramdon_seed", required_argument, nullptr, 'r'},
        {"enable_graph", no_argument, nullptr, 'g'},
        {nullptr, 0, nullptr, 0},
    };

    PerfOptions options;
    opterr = 0;
    int option = 0;
    while ((option = getopt_long(argc, argv, ":he:b:s:i:w:r:g", longOptions, nullptr)) != -1)
    {
        switch (option)
        {
        case 'h':
            printUsage(std::cout);
            std::exit(EXIT_SUCCESS);
        case 'e': options.enginePath = optarg; break;
        case 'b': options.batchSizes.push_back(parseCount("batch_size", optarg, 1)); break;
        case 's': options.sequenceLength = parseCount("sequence_length", optarg, 1); break;
        case 'i': options.iterations = parseCount("iterations", optarg, 1); break;
        case 'w': options.warmUpRuns = parseCount("warm_up_runs", optarg, 0); break;
        case 'r': options.randomSeed = static_cast<uint32_t>(parseInteger("random_seed", optarg, 0, UINT32_MAX)); break;
        case 'g': options.enableGraph = true; break;
        case ':': throw UsageError(std::string(argv[optind - 1]) + " requires an argument");
        default:
            throw UsageError(optopt != 0 ? std::string("unrecognized option '-") + static_cast<char>(optopt) + "'"
                                         : std::string("unrecognized option '") + argv[optind - 1] + "'");
        }
    }
    if (optind < argc)
    {
        throw UsageError(std::string("unexpected argument '") + argv[optind] + "'");
    }
    if (options.enginePath.empty())
    {
        throw UsageError("--engine is required");
    }
    if (options.batchSizes.empty())
    {
        options.batchSizes.push_back(1);
    }
    return options;
}

int32_t cudaAttribute(cudaDeviceAttr attribute, int32_t device)
{
    int32_t value = 0;
    CHECK_CUDA(cudaDeviceGetAttribute(&value, attribute, device));
    return value;
}

void printDeviceInformation()
{
    int32_t device = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    cudaDeviceProp properties{};
    CHECK_CUDA(cudaGetDeviceProperties(&properties, device));
    // CUDA 13 dropped the clock rates from cudaDeviceProp; the attributes hold them (in kHz) everywhere.
    double const computeClockGHz = cudaAttribute(cudaDevAttrClockRate, device) / 1.0e6;
    double const memoryClockGHz = cudaAttribute(cudaDevAttrMemoryClockRate, device) / 1.0e6;

    std::cout << "=== Device Information ===\n"
              << "Selected Device: " << properties.name << "\n"
              << "Compute Capability: " << properties.major << "." << properties.minor << "\n"
              << "SMs: " << properties.multiProcessorCount << "\n"
              << "Compute Clock Rate: " << computeClockGHz << " GHz\n"
              << "Device Global Memory: " << (properties.totalGlobalMem >> 20) << " MiB\n"
              << "Shared Memory per SM: " << (properties.sharedMemPerMultiprocessor >> 10) << " KiB\n"
              << "Memory Bus Width: " << properties.memoryBusWidth << " bits (ECC "
              << (properties.ECCEnabled ? "enabled" : "disabled") << ")\n"
              << "Memory Clock Rate: " << memoryClockGHz << " GHz\n"
              << "=== Software Information ===\n"
              << "Build time TensorRT version: " << NV_TENSORRT_MAJOR << "." << NV_TENSORRT_MINOR << "."
              << NV_TENSORRT_PATCH << "\n"
              << "Runtime linked TensorRT version: " << getInferLibVersion() << "\n";
}

// Token ids in [0, vocab) and segment ids in {0, 1} from the seeded standard engine; the mask is all ones.
struct RandomInputs
{
    std::vector<int32_t> inputIds;
    std::vector<int32_t> segmentIds;
    std::vector<int32_t> inputMask;
};

RandomInputs makeRandomInputs(size_t elementCount, uint32_t seed)
{
    std::default_random_engine generator(seed);
    std::uniform_int_distribution<int32_t> distribution(0, INT32_MAX);
    RandomInputs inputs;
    inputs.inputIds.resize(elementCount);
    inputs.segmentIds.resize(elementCount);
    inputs.inputMask.assign(elementCount, 1);
    for (size_t i = 0; i < elementCount; ++i)
    {
        inputs.inputIds[i] = distribution(generator) % kVocabSize;
        inputs.segmentIds[i] = distribution(generator) % 2;
    }
    return inputs;
}

void benchmark(PerfOptions const& options)
{
    printDeviceInformation();

    int32_t const maxBatchSize = *std::max_element(options.batchSizes.begin(), options.batchSizes.end());
    BertInference inference(options.enginePath, maxBatchSize, options.sequenceLength, options.enableGraph);
    RandomInputs const inputs
        = makeRandomInputs(static_cast<size_t>(maxBatchSize) * options.sequenceLength, options.randomSeed);

    // Batch sizes run in command-line order; each uses the first profile that can hold it.
    std::vector<std::vector<float>> timesPerBatch;
    for (int32_t const batchSize : options.batchSizes)
    {
        inference.prepare(batchSize);
        timesPerBatch.push_back(inference.run(inputs.inputIds.data(), inputs.segmentIds.data(),
            inputs.inputMask.data(), options.warmUpRuns, options.iterations));
    }
    for (size_t k = 0; k < options.batchSizes.size(); ++k)
    {
        BertInference::reportTiming(options.batchSizes[k], timesPerBatch[k]);
    }
}

} // namespace

int main(int argc, char* argv[])
{
    PerfOptions options;
    try
    {
        options = parseOptions(argc, argv);
    }
    catch (UsageError const& error)
    {
        std::cerr << "Invalid arguments: " << error.what() << " (see " << argv[0] << " --help)\n";
        return EXIT_FAILURE;
    }
    try
    {
        benchmark(options);
    }
    catch (std::exception const& error)
    {
        std::cerr << "[DemoBERT][E] " << error.what() << "\n";
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
