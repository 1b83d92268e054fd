// Command sarama-driver produces and consumes records with Sarama for
// proto-tests/test_clients.py.
//
// Usage: sarama-driver produce|consume SPEC.json RESULT.json
//
// The spec and result formats are the ones proto-tests/clients/README.md describes
// (shared with the KafkaJS driver). Sarama's own log goes to stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

type header [2]string

type record struct {
	Key       *string  `json:"key"`
	Value     *string  `json:"value"`
	Headers   []header `json:"headers"`
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Timestamp int64    `json:"timestamp,omitempty"`
}

type spec struct {
	Bootstrap   string   `json:"bootstrap"`
	Topic       string   `json:"topic"`
	Compression string   `json:"compression"`
	Idempotent  bool     `json:"idempotent"`
	Records     []record `json:"records"`
	Group       string   `json:"group"`
	Partitions  []int32  `json:"partitions"`
	Expected    int      `json:"expected"`
	TimeoutMs   int      `json:"timeout_ms"`
}

// clientError is one error the client reported; Code is the Kafka error code when
// the error is one (KError), else -1.
type clientError struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
}

type result struct {
	Acked   []record      `json:"acked,omitempty"`
	Records []record      `json:"records,omitempty"`
	Errors  []clientError `json:"errors"`
}

func asClientError(err error) clientError {
	var kerr sarama.KError
	if errors.As(err, &kerr) {
		return clientError{err.Error(), int(kerr)}
	}
	var cerr *sarama.ConsumerError
	if errors.As(err, &cerr) {
		return asClientError(cerr.Err)
	}
	var perr *sarama.ProducerError
	if errors.As(err, &perr) {
		return asClientError(perr.Err)
	}
	return clientError{err.Error(), -1}
}

func config(s *spec) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "sarama-driver"
	c.Version = sarama.V2_1_0_0
	c.Metadata.Retry.Backoff = 200 * time.Millisecond
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Flush.Messages = 20
	c.Producer.Flush.Frequency = 5 * time.Millisecond
	switch s.Compression {
	case "", "none":
	case "gzip":
		c.Producer.Compression = sarama.CompressionGZIP
	case "snappy":
		c.Producer.Compression = sarama.CompressionSnappy
	case "lz4":
		c.Producer.Compression = sarama.CompressionLZ4
	default:
		log.Fatalf("compression %q is not built into this driver", s.Compression)
	}
	if s.Idempotent {
		c.Producer.Idempotent = true
		c.Net.MaxOpenRequests = 1
		c.Producer.Retry.Max = 5
	}
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Return.Errors = true
	c.Consumer.Group.Session.Timeout = 6 * time.Second
	c.Consumer.Group.Heartbeat.Interval = time.Second
	return c
}

func str(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func produce(s *spec, res *result) {
	p, err := sarama.NewAsyncProducer([]string{s.Bootstrap}, config(s))
	if err != nil {
		res.Errors = append(res.Errors, asClientError(err))
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(2)
	go func() {
		defer wg.Done()
		for m := range p.Successes() {
			r := m.Metadata.(record)
			r.Partition, r.Offset = m.Partition, m.Offset
			mu.Lock()
			res.Acked = append(res.Acked, r)
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for e := range p.Errors() {
			mu.Lock()
			res.Errors = append(res.Errors, asClientError(e))
			mu.Unlock()
		}
	}()
	for _, r := range s.Records {
		m := &sarama.ProducerMessage{Topic: s.Topic, Partition: r.Partition, Metadata: r}
		if r.Key != nil {
			m.Key = sarama.StringEncoder(*r.Key)
		}
		if r.Value != nil {
			m.Value = sarama.StringEncoder(*r.Value)
		}
		for _, h := range r.Headers {
			m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(h[0]), Value: []byte(h[1])})
		}
		p.Input() <- m
	}
	p.AsyncClose()
	wg.Wait()
}

func fromMessage(m *sarama.ConsumerMessage) record {
	r := record{Partition: m.Partition, Offset: m.Offset, Timestamp: m.Timestamp.UnixNano() / 1e6}
	if m.Key != nil {
		k := string(m.Key)
		r.Key = &k
	}
	if m.Value != nil {
		v := string(m.Value)
		r.Value = &v
	}
	r.Headers = []header{}
	for _, h := range m.Headers {
		r.Headers = append(r.Headers, header{string(h.Key), string(h.Value)})
	}
	return r
}

// collector keeps consumed records until Expected arrived.
type collector struct {
	mu       sync.Mutex
	records  []record
	expected int
	done     chan struct{}
	once     sync.Once
}

func (c *collector) add(m *sarama.ConsumerMessage) {
	c.mu.Lock()
	c.records = append(c.records, fromMessage(m))
	n := len(c.records)
	c.mu.Unlock()
	if n >= c.expected {
		c.once.Do(func() { close(c.done) })
	}
}

func (c *collector) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (c *collector) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (c *collector) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		c.add(m)
		sess.MarkMessage(m, "")
	}
	return nil
}

// consumeGroup joins s.Group and reads until Expected records arrived, the first
// error, or the timeout.
func consumeGroup(s *spec, res *result, col *collector, deadline <-chan time.Time) {
	g, err := sarama.NewConsumerGroup([]string{s.Bootstrap}, s.Group, config(s))
	if err != nil {
		res.Errors = append(res.Errors, asClientError(err))
		return
	}
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failed := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{s.Topic}, col); err != nil {
				failed <- err
				return
			}
		}
	}()
	select {
	case <-col.done:
	case err := <-failed:
		res.Errors = append(res.Errors, asClientError(err))
	case err := <-g.Errors():
		res.Errors = append(res.Errors, asClientError(err))
	case <-deadline:
		res.Errors = append(res.Errors, clientError{"timed out", -1})
	}
}

// consumePartitions reads s.Partitions from the oldest offset without a group.
func consumePartitions(s *spec, res *result, col *collector, deadline <-chan time.Time) {
	c, err := sarama.NewConsumer([]string{s.Bootstrap}, config(s))
	if err != nil {
		res.Errors = append(res.Errors, asClientError(err))
		return
	}
	defer c.Close()
	for _, p := range s.Partitions {
		pc, err := c.ConsumePartition(s.Topic, p, sarama.OffsetOldest)
		if err != nil {
			res.Errors = append(res.Errors, asClientError(err))
			return
		}
		defer pc.Close()
		go func() {
			for m := range pc.Messages() {
				col.add(m)
			}
		}()
	}
	select {
	case <-col.done:
	case <-deadline:
		res.Errors = append(res.Errors, clientError{"timed out", -1})
	}
}

func main() {
	sarama.Logger = log.New(os.Stderr, "[sarama] ", log.LstdFlags|log.Lmicroseconds)
	if len(os.Args) != 4 {
		log.Fatalf("usage: %s produce|consume SPEC.json RESULT.json", os.Args[0])
	}
	raw, err := ioutil.ReadFile(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	var s spec
	if err := json.Unmarshal(raw, &s); err != nil {
		log.Fatal(err)
	}
	res := result{Errors: []clientError{}}
	switch os.Args[1] {
	case "produce":
		produce(&s, &res)
	case "consume":
		col := &collector{expected: s.Expected, done: make(chan struct{})}
		deadline := time.After(time.Duration(s.TimeoutMs) * time.Millisecond)
		if s.Group != "" {
			consumeGroup(&s, &res, col, deadline)
		} else {
			consumePartitions(&s, &res, col, deadline)
		}
		col.mu.Lock()
		res.Records = append([]record{}, col.records...)
		col.mu.Unlock()
		sort.SliceStable(res.Records, func(i, j int) bool {
			return res.Records[i].Partition < res.Records[j].Partition
		})
	default:
		log.Fatalf("unknown mode %q", os.Args[1])
	}
	out, err := json.Marshal(res)
	if err != nil {
		log.Fatal(err)
	}
	if err := ioutil.WriteFile(os.Args[3], out, 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "sarama-driver %s: %d acked, %d consumed, %d errors\n",
		os.Args[1], len(res.Acked), len(res.Records), len(res.Errors))
}
