// The Python module `infer_c`: class bert_inf runs a demo BERT engine through BertInference.
#include "bert_infer.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

namespace py = pybind11;

namespace
{

using demobert::BertInference;
using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

void checkInputSize(char const* name, Int32Array const& array, size_t expected)
{
    if (static_cast<size_t>(array.size()) != expected)
    {
        throw py::value_error(std::string(name) + " has " + std::to_string(array.size())
            + " elements; the prepared batch needs batch size x sequence length = " + std::to_string(expected));
    }
}

// One inference of the prepared batch. The result is the whole output buffer: [maxB*S*2] for a
// varseqlen engine (start logits of every token, then end logits), [maxB, S, 2, 1, 1] otherwise.
py::array_t<float> runOnce(BertInference& inference, Int32Array const& inputIds, Int32Array const& segmentIds,
    Int32Array const& inputMask)
{
    if (inference.preparedBatchSize() == 0)
    {
        throw std::logic_error("call prepare(batch_size) before run()");
    }
    size_t const expected = inference.inputElementCount();
    checkInputSize("input_ids", inputIds, expected);
    checkInputSize("segment_ids", segmentIds, expected);
    checkInputSize("input_mask", inputMask, expected);
    {
        py::gil_scoped_release release;
        inference.run(inputIds.data(), segmentIds.data(), inputMask.data(), /*warmUps=*/0, /*iterations=*/1);
    }

    std::vector<py::ssize_t> shape;
    if (inference.isVariableLength())
    {
        shape = {static_cast<py::ssize_t>(inference.output().size())};
    }
    else
    {
        shape = {inference.maxBatchSize(), inference.seqLength(), 2, 1, 1};
    }
    py::array_t<float> result(shape);
    std::copy(inference.output().begin(), inference.output().end(), result.mutable_data());
    return result;
}

} // namespace

PYBIND11_MODULE(infer_c, module)
{
    module.doc() = "Pybind11 plugin for Bert inference";

    py::class_<BertInference>(module, "bert_inf")
        .def(py::init<std::string const&, int32_t, int32_t, bool>(), py::arg("engine_path"), py::arg("max_batch"),
            py::arg("max_seq_len"), py::arg("enable_graph"))
        .def("prepare", &BertInference::prepare, py::arg("batch_size"),
            "Select the optimization profile and input shapes for batch_size sequences (captures the CUDA graph "
            "when enabled).")
        .def("run", &runOnce, py::arg("input_ids"), py::arg("segment_ids"), py::arg("input_mask"),
            "Run one inference on int32 arrays of batch_size x max_seq_len elements and return the logits.")
        .def_property_readonly("variable_length", &BertInference::isVariableLength);
}
